"""Framework and server glue, shipped as ``sflow_app.integrations``.

Each module imports its framework at top level: only users who import it pay for it.
"""
