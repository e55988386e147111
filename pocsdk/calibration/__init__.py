"""Calibration data: datasets, judges and the labels that predictors learn from."""
