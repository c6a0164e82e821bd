"""Battery alerting backend: the domain core shared by the Function App, the CLI and the scoring script.

One module per domain noun. Pure functions over pandas/numpy in the middle; Azure clients and HTTP
at the edges, passed in by the caller so tests can hand in real local services (Azurite, azmlinfsrv).
"""

import pandas as _pandas

# pandas 3 stores text in pyarrow when pyarrow is installed (the Parquet archive needs it), and pyarrow
# strings are UTF-8, which a lone surrogate is not: validation would raise instead of naming the value.
# Python storage keeps text exactly as the events carried it, as before pyarrow was a dependency.
_pandas.set_option("mode.string_storage", "python")
