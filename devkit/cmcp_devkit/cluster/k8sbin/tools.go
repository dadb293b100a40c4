//go:build tools

// Package k8sbin pins the Kubernetes commands so `go mod tidy` keeps their dependencies:
// the control plane, and the kubelet and kube-proxy of the local cluster's real node.
package k8sbin

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
