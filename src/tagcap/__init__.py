"""tagcap: recurrent image annotation and captioning on one shared pipeline."""

__version__ = "0.1.0"
