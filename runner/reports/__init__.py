"""Reports: what a person reads, on the console and in the run dir.

The console, the analysis reports (confusion matrix, Grad-CAM, calibration, per-class
table), the data report and the augmentation preview.

May import runner.config, runner.data, runner.augment and runner.tracking (the Tracker
protocol); never the training loop, sweeps or a recipe.
"""
