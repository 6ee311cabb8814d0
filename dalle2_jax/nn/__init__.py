"""Building blocks shared by the models: axis names, attention, transformers."""
