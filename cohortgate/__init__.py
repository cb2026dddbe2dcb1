"""cohortgate: the top-level command line. The real code lives in gateway/, merge/, evals/ and demo/."""

__version__ = "0.1.0"
