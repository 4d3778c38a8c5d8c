"""Tables and plots for benchmark and evaluation runs."""
