"""Config: resolvers, choice lists, validation, the `_target_` allowlist, redaction.

Also the one helper every layer writes files with (`files.replaced_whole`).

The bottom layer: torch-free and light, so composing and checking a config costs no
heavy import. It may import nothing else from `runner`; every other package may import it.
"""
