// The `watch` program: a pod watch the way controllers and operators run one, with
// client-go in Kubernetes' protobuf encoding (kubectl watches in JSON), so the tests can see
// what such a client makes of a watch the proxy ends.
//
//	kube-cluster watch --kubeconfig FILE --namespace NS
//
// Prints "watching" once the watch is open and one line per event ("ADDED web-1"). An ERROR
// event is printed as client-go turns it into an error, as a reflector logs it
// ("ERROR Forbidden: …"), and ends the program with status 3; a watch closed with no ERROR
// event prints "closed" and ends it with status 4.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

func runWatch(args []string) {
	flags := flag.NewFlagSet("watch", flag.ExitOnError)
	kubeconfig := flags.String("kubeconfig", "", "the kubeconfig (required)")
	namespace := flags.String("namespace", "default", "the namespace whose pods to watch")
	_ = flags.Parse(args)
	if *kubeconfig == "" {
		fmt.Fprintln(os.Stderr, "watch: --kubeconfig is required")
		os.Exit(2)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		fmt.Fprintf(os.Stderr, "watch: %v\n", err)
		os.Exit(1)
	}
	cfg.ContentType = "application/vnd.kubernetes.protobuf"
	cfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf"
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "watch: %v\n", err)
		os.Exit(1)
	}
	w, err := client.CoreV1().Pods(*namespace).Watch(context.Background(), metav1.ListOptions{})
	if err != nil {
		fmt.Fprintf(os.Stderr, "watch: %v\n", err)
		os.Exit(1)
	}
	fmt.Println("watching")
	for ev := range w.ResultChan() {
		if ev.Type == watch.Error {
			err := apierrors.FromObject(ev.Object)
			fmt.Printf("ERROR %s: %v\n", apierrors.ReasonForError(err), err)
			os.Exit(3)
		}
		name := ""
		if o, ok := ev.Object.(metav1.Object); ok {
			name = o.GetName()
		}
		fmt.Printf("%s %s\n", ev.Type, name)
	}
	fmt.Println("closed")
	os.Exit(4)
}
