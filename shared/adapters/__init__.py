"""One module per external system: storage, registry, scoring client, head-unit gateway, MLflow, Azure ML."""
