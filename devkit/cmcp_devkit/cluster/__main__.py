"""``python -m cmcp_devkit.cluster up|down|kubeconfig|status``: see :mod:`.control_plane`."""

from cmcp_devkit.cluster.control_plane import main

raise SystemExit(main())
