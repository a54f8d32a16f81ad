"""Chain-of-Zoom evaluation: SR backbones, the zoom chain, metrics, tables and figures."""
