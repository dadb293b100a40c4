// Command cmcp-netpol runs the SIG-Network reference NetworkPolicy engine
// (sigs.k8s.io/kube-network-policies: nftables + nfqueue) for the local cluster's real node.
//
// Why a main of our own rather than the module's cmd: upstream's main reads only the in-cluster
// configuration (a service-account token at a fixed path), stops only on SIGINT and sleeps after
// it; the real node runs the engine as a host process with its own client certificate, so this
// main takes a kubeconfig, stops on SIGTERM or SIGINT and returns once the engine removed its
// nftables table. Dev-kit only: the product itself is Python.
//
// On a kernel without nft_queue (CONFIG_NFT_QUEUE unset, as on this project's machines) the
// engine's table cannot load and it logs so on every sync; the node then steers packets to its
// queue with an iptables NFQUEUE chain (../netpol.py, docs/adr/0021).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	"sigs.k8s.io/kube-network-policies/pkg/networkpolicy"
)

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig with the engine's own client certificate")
	nodeName := flag.String("hostname-override", "", "the Node whose pods this engine guards")
	queueID := flag.Int("nfqueue-id", 100, "nfqueue number the nftables rules send packets to")
	tableName := flag.String("nftables-table", "kube-network-policies", "inet table the engine owns")
	klog.InitFlags(nil)
	flag.Parse()
	if *kubeconfig == "" || *nodeName == "" {
		fmt.Fprintln(os.Stderr, "usage: cmcp-netpol --kubeconfig FILE --hostname-override NODE")
		os.Exit(2)
	}
	if err := run(*kubeconfig, *nodeName, *queueID, *tableName); err != nil {
		klog.ErrorS(err, "network policy engine stopped")
		os.Exit(1)
	}
}

func run(kubeconfig, nodeName string, queueID int, tableName string) error {
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	config, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		return fmt.Errorf("client: %w", err)
	}
	factory := informers.NewSharedInformerFactory(client, 0)
	// FailOpen stays false: with the engine gone, queued packets are dropped (fail closed).
	// NRI stays "enabled": the library looks an unknown IP up in its NRI plugin, which must exist;
	// containerd 1.6 has no NRI socket, so the plugin only logs that it cannot connect.
	controller, err := networkpolicy.NewController(
		client,
		factory.Networking().V1().NetworkPolicies(),
		factory.Core().V1().Namespaces(),
		factory.Core().V1().Pods(),
		nil, nil, nil, nil,
		networkpolicy.Config{
			QueueID:             queueID,
			NodeName:            nodeName,
			NFTableName:         tableName,
			NetfilterBug1766Fix: true,
		},
	)
	if err != nil {
		return fmt.Errorf("controller: %w", err)
	}
	factory.Start(ctx.Done())
	// Run returns after ctx ends, once its deferred clean-up deleted the nftables table.
	return controller.Run(ctx)
}
