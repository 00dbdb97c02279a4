"""The data sets: each module's factory returns a `runner.data.splits.DataSplits`.

Add your own: a function returning `DataSplits`, named as `_target_` in
conf/data/<name>.yaml (with `defaults: [_switches, _self_]` for the real-world switches).
"""
