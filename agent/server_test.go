package agent

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/i2kit/i2kit/agent/boot"
)

// flushProbe records whether the power-off had been handed on when the answer was flushed.
type flushProbe struct {
	*httptest.ResponseRecorder
	poweroff        chan time.Duration
	handedOnAtFlush bool
}

func (f *flushProbe) Flush() {
	f.handedOnAtFlush = len(f.poweroff) > 0
	f.ResponseRecorder.Flush()
}

// TestPowerOffAnswersBeforeStopping: the VM may power off as soon as the request is handed on, so the host must
// already have its answer then (a host that saw the power-off as a dropped connection failed CI once).
func TestPowerOffAnswersBeforeStopping(t *testing.T) {
	poweroff := make(chan time.Duration, 1)
	w := &flushProbe{ResponseRecorder: httptest.NewRecorder(), poweroff: poweroff}
	(&server{rt: newRuntime(io.Discard, boot.ImageConfig{}, "pod"), poweroff: poweroff}).powerOff(w, httptest.NewRequest(http.MethodPost, "/v1/poweroff?grace=2s", nil))
	if !w.Flushed || w.Code != http.StatusAccepted {
		t.Fatalf("the answer was not sent: flushed=%v code=%d", w.Flushed, w.Code)
	}
	if w.handedOnAtFlush {
		t.Error("the power-off began before the answer was sent")
	}
	if cl := w.Header().Get("Content-Length"); cl != "0" {
		t.Errorf("Content-Length %q: the flushed answer is not whole (a chunked one ends only after the handler)", cl)
	}
	if grace := <-poweroff; grace != 2*time.Second {
		t.Errorf("grace %s, want 2s", grace)
	}
}
