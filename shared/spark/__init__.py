"""Spark: the nightly batch scoring and the training-set build for fleets one machine cannot hold.

`job.py` is the PySpark job (a script Databricks and Azure ML serverless Spark run as it is); it runs the
same pure preparation, window, forecast and risk code as the in-process path, per group of cars
(`groupBy(...).applyInPandas`). `engine.py` is `python -m shared score --engine spark`; `submit.py`
sends the job to Databricks or Azure ML for the nightly timer. Nothing here is imported by the Function
App at module level: pyspark is not among its packages.
"""
