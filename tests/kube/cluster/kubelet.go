package main

// A stand-in kubelet for the tests, since a real one cannot run here: it serves what the API
// server proxies to a kubelet for pods (container logs, exec, attach, port-forward), with the
// kubelet's own streaming code (k8s.io/cri-streaming: SPDY and WebSocket, as a kubelet
// negotiates them) in front of a make-believe container:
//   - its logs are three lines, then with follow=true one more every 20 ms;
//   - exec and attach run an echo shell (each stdin line back on stdout until "exit");
//     `tar cf - PATH` (what `kubectl cp` runs) writes an archive of PATH holding CPContent,
//     and `yes` writes lines without end (busy output, for cuts mid-frame);
//   - port-forward to port N reaches 127.0.0.1:N on this machine.

import (
	"archive/tar"
	"bufio"
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"k8s.io/client-go/util/cert"
	"k8s.io/cri-streaming/pkg/streaming/portforward"
	"k8s.io/cri-streaming/pkg/streaming/remotecommand"
)

// CPContent is what every file holds for `kubectl cp` out of a pod (tests/common/kube.rs
// expects the same bytes).
const CPContent = "copied out of the stand-in pod through the proxy\n"

const (
	idleTimeout           = 4 * time.Hour
	streamCreationTimeout = 30 * time.Second
)

func runKubelet(args []string) {
	flags := flag.NewFlagSet("kubelet", flag.ExitOnError)
	listen := flags.String("listen", "127.0.0.1:10250", "address to serve HTTPS on")
	_ = flags.Parse(args)
	certPEM, keyPEM, err := cert.GenerateSelfSignedCertKey("127.0.0.1", []net.IP{net.ParseIP("127.0.0.1")}, nil)
	if err != nil {
		log.Fatalf("kubelet: %v", err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		log.Fatalf("kubelet: %v", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /containerLogs/{ns}/{pod}/{container}", serveLogs)
	mux.HandleFunc("/exec/{ns}/{pod}/{container}", serveExec)
	mux.HandleFunc("/attach/{ns}/{pod}/{container}", serveAttach)
	mux.HandleFunc("/portForward/{ns}/{pod}", servePortForward)
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("kubelet: %v", err)
	}
	server := &http.Server{
		Handler: mux,
		// Upgraded streams are HTTP/1.1 only.
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{pair}, NextProtos: []string{"http/1.1"}},
	}
	fmt.Fprintf(os.Stderr, "kubelet: serving on %s\n", ln.Addr())
	log.Fatal(server.ServeTLS(ln, "", ""))
}

func serveLogs(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain")
	fmt.Fprintf(w, "log of %s/%s/%s: line 1\nline 2\nline 3\n", r.PathValue("ns"), r.PathValue("pod"), r.PathValue("container"))
	flusher, _ := w.(http.Flusher)
	if flusher != nil {
		flusher.Flush()
	}
	if r.URL.Query().Get("follow") != "true" {
		return
	}
	for n := 4; ; n++ {
		select {
		case <-r.Context().Done():
			return
		case <-time.After(20 * time.Millisecond):
		}
		if _, err := fmt.Fprintf(w, "line %d\n", n); err != nil {
			return
		}
		if flusher != nil {
			flusher.Flush()
		}
	}
}

type container struct{}

func (container) ExecInContainer(_ context.Context, _, _, _ string, cmd []string, in io.Reader, out, _ io.WriteCloser, _ bool, _ <-chan remotecommand.TerminalSize, _ time.Duration) error {
	if len(cmd) == 4 && cmd[0] == "tar" && cmd[1] == "cf" && cmd[2] == "-" {
		return writeTar(out, cmd[3])
	}
	if len(cmd) == 1 && cmd[0] == "yes" && out != nil {
		line := []byte(strings.Repeat("y", 1000) + "\n")
		for {
			if _, err := out.Write(line); err != nil {
				return err
			}
		}
	}
	return echoShell(in, out, "stand-in shell ready\n")
}

func (container) AttachContainer(_ context.Context, _, _, _ string, in io.Reader, out, _ io.WriteCloser, _ bool, _ <-chan remotecommand.TerminalSize) error {
	return echoShell(in, out, "attached to the stand-in container\n")
}

func (container) PortForward(ctx context.Context, _, _ string, port int32, stream io.ReadWriteCloser) error {
	defer stream.Close()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return err
	}
	defer conn.Close()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(conn, stream); done <- struct{}{} }()
	go func() { _, _ = io.Copy(stream, conn); done <- struct{}{} }()
	<-done
	return nil
}

func echoShell(in io.Reader, out io.Writer, greeting string) error {
	if out == nil {
		out = io.Discard
	}
	if _, err := io.WriteString(out, greeting); err != nil {
		return err
	}
	if in == nil {
		return nil
	}
	lines := bufio.NewScanner(in)
	for lines.Scan() {
		if strings.TrimSpace(lines.Text()) == "exit" {
			return nil
		}
		if _, err := fmt.Fprintln(out, lines.Text()); err != nil {
			return err
		}
	}
	return nil
}

func writeTar(out io.Writer, path string) error {
	tw := tar.NewWriter(out)
	header := &tar.Header{Name: strings.TrimPrefix(path, "/"), Mode: 0o644, Size: int64(len(CPContent)), ModTime: time.Unix(1700000000, 0)}
	if err := tw.WriteHeader(header); err != nil {
		return err
	}
	if _, err := io.WriteString(tw, CPContent); err != nil {
		return err
	}
	return tw.Close()
}

func serveExec(w http.ResponseWriter, r *http.Request) {
	opts, err := remotecommand.NewOptions(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	remotecommand.ServeExec(w, r, container{}, r.PathValue("pod"), "", r.PathValue("container"), r.URL.Query()["command"], opts, idleTimeout, streamCreationTimeout, remotecommand.SupportedStreamingProtocols)
}

func serveAttach(w http.ResponseWriter, r *http.Request) {
	opts, err := remotecommand.NewOptions(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	remotecommand.ServeAttach(w, r, container{}, r.PathValue("pod"), "", r.PathValue("container"), opts, idleTimeout, streamCreationTimeout, remotecommand.SupportedStreamingProtocols)
}

func servePortForward(w http.ResponseWriter, r *http.Request) {
	opts, err := portforward.NewV4Options(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	portforward.ServePortForward(w, r, container{}, r.PathValue("pod"), "", opts, idleTimeout, streamCreationTimeout, portforward.SupportedProtocols)
}
