"""The battery-failure forecasters (LightGBM, LSTM, MLflow), their loader, backtest, explanation, fairness and reports."""
