package protocol

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"reflect"
	"testing"
	"time"
)

// TestPodConfigCarriesStartOrder: what the agent orders the pod's starts by (which containers are init
// containers, a container's own restartPolicy, the pod's grace period) reaches it through Configure, and a config
// without them (an older node's) decodes to their zero values.
func TestPodConfigCarriesStartOrder(t *testing.T) {
	grace := int64(7)
	sent := PodConfig{RestartPolicy: RestartNever, TerminationGracePeriodSeconds: &grace, Containers: []ContainerConfig{
		{Name: "setup", Init: true},
		{Name: "proxy", Init: true, RestartPolicy: RestartAlways},
		{Name: "app"},
	}}
	host, guest := net.Pipe()
	defer host.Close()
	got := make(chan PodConfig, 1)
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /v1/pod", func(w http.ResponseWriter, r *http.Request) {
		var cfg PodConfig
		if err := json.NewDecoder(r.Body).Decode(&cfg); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		got <- cfg
		w.WriteHeader(http.StatusNoContent)
	})
	serve(t, guest, mux)
	c, err := NewClient(host, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Configure(context.Background(), sent); err != nil {
		t.Fatal(err)
	}
	if cfg := <-got; !reflect.DeepEqual(cfg, sent) {
		t.Errorf("the agent got %+v, want %+v", cfg, sent)
	}

	var old PodConfig
	if err := json.Unmarshal([]byte(`{"restartPolicy":"Always","containers":[{"name":"proxy"},{"name":"app"}]}`), &old); err != nil {
		t.Fatal(err)
	}
	for _, cc := range old.Containers {
		if cc.Init || cc.RestartPolicy != "" {
			t.Errorf("an older node's %s decodes as %+v", cc.Name, cc)
		}
	}
	if old.TerminationGracePeriodSeconds != nil {
		t.Errorf("an older node's grace period decodes as %d", *old.TerminationGracePeriodSeconds)
	}
}
