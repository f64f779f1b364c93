"""cxr-nodule-aug: realistic, controllable lung nodule insertion for chest X-rays."""

__version__ = "0.1.0"
