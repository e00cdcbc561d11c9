"""The ascent engine: models, image parameterizations, transforms, objectives, optimizers,
the compiled ascent and quality figures. Plain TensorFlow and NumPy: no Hydra, no MLflow."""
