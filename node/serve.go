package node

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/node/nodeutil"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apiserver/pkg/server/dynamiccertificates"
	"k8s.io/client-go/kubernetes"
)

// servingCert loads the kubelet API's certificate from the configured files, or makes a self-signed one for the
// node's name and InternalIP. The apiserver does not verify kubelet serving certificates unless it runs with
// --kubelet-certificate-authority; clusters that set it need files signed by that CA.
func servingCert(c Config) (tls.Certificate, error) {
	if c.TLSCertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.TLSCertFile, c.TLSKeyFile)
		if err != nil {
			return tls.Certificate{}, fmt.Errorf("loading tlsCertFile/tlsKeyFile, %w", err)
		}
		return cert, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("generating serving key, %w", err)
	}
	sn, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{CommonName: "system:node:" + c.NodeName, Organization: []string{"system:nodes"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().AddDate(1, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{c.NodeName},
		IPAddresses:  []net.IP{net.ParseIP(c.InternalIP)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("creating serving certificate, %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// clientCA returns the CA bundle that verifies client certificates on the kubelet API: the configured file, else
// the cluster's client CA as the apiserver publishes it for delegated authentication.
func clientCA(ctx context.Context, c Config, client kubernetes.Interface) ([]byte, error) {
	if c.ClientCAFile != "" {
		b, err := os.ReadFile(c.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("reading clientCAFile, %w", err)
		}
		return b, nil
	}
	cm, err := client.CoreV1().ConfigMaps(metav1.NamespaceSystem).Get(ctx, "extension-apiserver-authentication", metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("reading the cluster's client CA from kube-system/extension-apiserver-authentication (or set clientCAFile), %w", err)
	}
	ca := cm.Data["client-ca-file"]
	if ca == "" {
		return nil, errors.New("kube-system/extension-apiserver-authentication has no client-ca-file: set clientCAFile")
	}
	return []byte(ca), nil
}

// kubeletAuth authenticates kubelet API requests as a kubelet does — client certificates signed by the cluster CA,
// bearer tokens through TokenReview — and authorizes them through SubjectAccessReview on the node's
// nodes/proxy, nodes/log, nodes/stats and nodes/metrics subresources. Anonymous requests are refused (401).
func kubeletAuth(ctx context.Context, c Config, client kubernetes.Interface) (nodeutil.Auth, error) {
	ca, err := clientCA(ctx, c, client)
	if err != nil {
		return nil, err
	}
	caProvider, err := dynamiccertificates.NewStaticCAContent("client-ca", ca)
	if err != nil {
		return nil, fmt.Errorf("parsing client CA, %w", err)
	}
	return nodeutil.WebhookAuth(client, c.NodeName, func(w *nodeutil.WebhookAuthConfig) error {
		w.AuthnConfig.ClientCertificateCAContentProvider = caProvider
		return nil
	})
}

// kubeletMux is the kubelet API's mux before the provider's routes join it (at "/"): it serves the node's metrics
// at /metrics, authorized as a kubelet's /metrics is (nodes/metrics). "/metrics" matches only itself, so that
// /metrics/resource stays the provider's.
func kubeletMux(metrics http.Handler) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics)
	return mux
}

// handler serves /healthz and the provider's routes behind auth.
func handler(auth nodeutil.Auth, mux *http.ServeMux) http.Handler {
	mux.HandleFunc("/healthz", healthz)
	return nodeutil.WithAuth(auth, mux)
}

// healthz answers 200 "ok": the process runs and its configuration was valid.
func healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain")
	w.Write([]byte("ok")) //nolint:errcheck
}

// servePlain serves over plain HTTP, without authentication, until ctx ends: /healthz on c.HealthzAddress, for
// probes (200 "ok": a replica whose configuration is valid and whose process runs is alive, whether it leads or
// stands by), and metrics on c.MetricsAddress at /metrics, for Prometheus — one listener when the two addresses
// are the same. Every listener is bound before servePlain returns, so that an address in use fails the start.
func servePlain(ctx context.Context, c Config, metrics http.Handler) error {
	type server struct {
		field string
		mux   *http.ServeMux
	}
	var addrs []string
	servers := map[string]*server{}
	at := func(addr, field string) *http.ServeMux {
		s := servers[addr]
		if s == nil {
			s = &server{field: field, mux: http.NewServeMux()}
			servers[addr] = s
			addrs = append(addrs, addr)
		}
		return s.mux
	}
	if c.HealthzAddress != "" {
		at(c.HealthzAddress, "healthzAddress").HandleFunc("GET /healthz", healthz)
	}
	if c.MetricsAddress != "" {
		at(c.MetricsAddress, "metricsAddress").Handle("GET /metrics", metrics)
	}
	var listeners []net.Listener
	for _, addr := range addrs {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			for _, l := range listeners {
				l.Close()
			}
			return fmt.Errorf("%s: %w", servers[addr].field, err)
		}
		listeners = append(listeners, l)
	}
	for i, l := range listeners {
		srv := &http.Server{Handler: servers[addrs[i]].mux, ReadHeaderTimeout: 5 * time.Second}
		context.AfterFunc(ctx, func() { srv.Close() })
		go srv.Serve(l) //nolint:errcheck // ends with ErrServerClosed when ctx ends
	}
	return nil
}
