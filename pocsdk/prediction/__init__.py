"""Performance prediction: features, predictors, calibration and the floor search."""
