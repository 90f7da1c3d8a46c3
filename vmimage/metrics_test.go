package vmimage

import (
	"context"
	"sync"
	"testing"
	"time"
)

// metricsRecorder counts what a Builder tells its Metrics.
type metricsRecorder struct {
	mu                  sync.Mutex
	hits, misses        int
	builds, buildErrors int
	formats             map[string]bool
}

func (r *metricsRecorder) ImageCacheLookup(format string, hit bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.formats == nil {
		r.formats = map[string]bool{}
	}
	r.formats[format] = true
	if hit {
		r.hits++
	} else {
		r.misses++
	}
}

func (r *metricsRecorder) ImageBuilt(format string, d time.Duration, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.builds++
	if err != nil {
		r.buildErrors++
	}
}

func (r *metricsRecorder) counts() (hits, misses, builds int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.hits, r.misses, r.builds
}

// TestMetricsCountLookupsAndBuilds: a first Ensure is a miss and one build, a second a hit and no build; callers
// joining a build under way are misses but add no build.
func TestMetricsCountLookupsAndBuilds(t *testing.T) {
	reg := newRegistry(t, "", "")
	reg.push(t, "app:1", layer(t, file{"x", "y"}))
	reg.push(t, "app:2", layer(t, file{"x", "z"}))
	b := newBuilder(t, &Source{Insecure: []string{reg.host()}}, 10, 1<<30)
	rec := &metricsRecorder{}
	b.Metrics = rec
	ctx := context.Background()
	for range 2 {
		if _, err := b.Ensure(ctx, spec(reg.host()+"/app:1"), "direct"); err != nil {
			t.Fatal(err)
		}
	}
	if hits, misses, builds := rec.counts(); hits != 1 || misses != 1 || builds != 1 {
		t.Errorf("two Ensures of one spec: %d hits, %d misses, %d builds; want 1, 1, 1", hits, misses, builds)
	}
	if !rec.formats["direct"] || len(rec.formats) != 1 {
		t.Errorf("formats %v, want direct", rec.formats)
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			if _, err := b.Ensure(ctx, spec(reg.host()+"/app:2"), "direct"); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if _, _, builds := rec.counts(); builds != 2 {
		t.Errorf("four concurrent Ensures of a new spec: %d builds in all, want 2", builds)
	}
}
