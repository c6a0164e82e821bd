"""The battery-failure forecasters, their loader, backtest, explanation, fairness and reports."""
