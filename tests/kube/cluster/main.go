// One binary, five programs: started as `kube-apiserver` it is the real API server, as
// `kubectl` the real kubectl, as `etcd` a single-member etcd embedded from etcd's own server
// package, at the versions k8s.io/kubernetes itself requires, and as `kubelet` a stand-in
// kubelet for pod streams (kubelet.go), and as `watch` a client-go pod watch in protobuf
// (watch.go). The name is taken from
// argv[0] (a symlink) or, for convenience, from the first argument.
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net/url"
	"os"
	"path/filepath"

	"go.etcd.io/etcd/server/v3/embed"
	"k8s.io/component-base/cli"
	kubectl "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	// A test harness that keeps the write end of our stdin can be sure we end with it, even
	// when the harness itself is killed; the one that was told to also removes the
	// cluster's folder (etcd's data is over 100 MB).
	if os.Getenv("KUBE_CLUSTER_EXIT_WITH_STDIN") == "1" {
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			if dir := os.Getenv("KUBE_CLUSTER_REMOVE_ON_EXIT"); dir != "" {
				_ = os.RemoveAll(dir)
			}
			os.Exit(0)
		}()
	}
	name := filepath.Base(os.Args[0])
	if name != "kube-apiserver" && name != "kubectl" && name != "etcd" && name != "kubelet" && name != "watch" && len(os.Args) > 1 {
		name = os.Args[1]
		os.Args = os.Args[1:]
	}
	switch name {
	case "kube-apiserver":
		os.Exit(cli.Run(apiserver.NewAPIServerCommand()))
	case "kubectl":
		if err := cli.RunNoErrOutput(kubectl.NewDefaultKubectlCommand()); err != nil {
			kubectlutil.CheckErr(err)
		}
	case "etcd":
		runEtcd(os.Args[1:])
	case "kubelet":
		runKubelet(os.Args[1:])
	case "watch":
		runWatch(os.Args[1:])
	default:
		fmt.Fprintln(os.Stderr, "usage: kube-cluster kube-apiserver|kubectl|etcd|kubelet|watch [ARGS...]")
		os.Exit(2)
	}
}

func runEtcd(args []string) {
	flags := flag.NewFlagSet("etcd", flag.ExitOnError)
	dir := flags.String("data-dir", "", "where etcd keeps its data (required)")
	client := flags.String("listen-client-url", "http://127.0.0.1:2379", "client URL")
	peer := flags.String("listen-peer-url", "http://127.0.0.1:2380", "peer URL (nobody joins; it must only be free)")
	_ = flags.Parse(args)
	if *dir == "" {
		log.Fatal("etcd: --data-dir is required")
	}
	clientURL, err := url.Parse(*client)
	if err != nil {
		log.Fatalf("etcd: --listen-client-url: %v", err)
	}
	peerURL, err := url.Parse(*peer)
	if err != nil {
		log.Fatalf("etcd: --listen-peer-url: %v", err)
	}
	cfg := embed.NewConfig()
	cfg.Dir = *dir
	cfg.LogLevel = "error"
	cfg.ListenClientUrls = []url.URL{*clientURL}
	cfg.AdvertiseClientUrls = []url.URL{*clientURL}
	cfg.ListenPeerUrls = []url.URL{*peerURL}
	cfg.AdvertisePeerUrls = []url.URL{*peerURL}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	server, err := embed.StartEtcd(cfg)
	if err != nil {
		log.Fatalf("etcd: %v", err)
	}
	defer server.Close()
	<-server.Server.ReadyNotify()
	fmt.Fprintf(os.Stderr, "etcd: ready on %s\n", clientURL)
	log.Fatal(<-server.Err())
}
