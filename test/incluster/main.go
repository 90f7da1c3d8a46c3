// Command incluster is an in-cluster Kubernetes client for the end-to-end tests. From inside a pod it reaches the
// API server as every in-cluster client does (client-go's rest.InClusterConfig: KUBERNETES_SERVICE_HOST and
// KUBERNETES_SERVICE_PORT, the mounted service account token and CA), prints who the API server says it is, then
// prints the body of each URL given as an argument (Services reached by their ClusterIP).
package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "incluster:", err)
		os.Exit(1)
	}
}

func run() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	r, err := cs.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("asking the API server at %s who I am: %w", cfg.Host, err)
	}
	fmt.Printf("in-cluster as %s via %s\n", r.Status.UserInfo.Username, cfg.Host)
	for _, u := range os.Args[1:] {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		fmt.Printf("%s: %s", u, body)
	}
	return nil
}
