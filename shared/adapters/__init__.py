"""One module per external system: Blob/Queue/Table storage, registry, scoring client, head-unit gateway, MLflow, Azure ML, Event Hubs."""
