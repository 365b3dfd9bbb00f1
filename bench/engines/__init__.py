"""One module per engine, each with ``prepare`` (offline artifacts, if the engine has any) and
``run_job`` (load, then time training steps) returning the fields of ``bench.measure``."""
