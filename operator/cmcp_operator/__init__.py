"""cmcp-operator: Kopf operator for PolicyBundle and McpRoute (API group ``cmcp.dev``)."""

__version__ = "0.1.0"
