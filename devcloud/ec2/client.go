package ec2

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
)

// BufferRequestBodies wraps an SDK client's transport so that each request body is read into memory before it
// is sent. smithy-go closes the request body as soon as the response headers arrive; against a local endpoint
// that answers within microseconds, net/http's writer may still be making its final read of the body, fails,
// and closes the connection under the response ("use of closed network connection", aws-sdk-go-v2 #1825). The
// race is real against AWS too, but needs loopback latency (and -race) to show; tests point their clients here:
//
//	hc := &http.Client{Transport: ec2.BufferRequestBodies(http.DefaultTransport)}
//	client := awsec2.NewFromConfig(cfg, func(o *awsec2.Options) { o.HTTPClient = hc })
func BufferRequestBodies(rt http.RoundTripper) http.RoundTripper {
	return bufferedBodies{rt}
}

type bufferedBodies struct{ next http.RoundTripper }

func (b bufferedBodies) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Body == nil || r.Body == http.NoBody {
		return b.next.RoundTrip(r)
	}
	data, err := io.ReadAll(r.Body)
	_ = r.Body.Close()
	if err != nil {
		return nil, fmt.Errorf("buffering the request body, %w", err)
	}
	c := r.Clone(r.Context())
	c.Body = io.NopCloser(bytes.NewReader(data))
	c.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil }
	c.ContentLength = int64(len(data))
	return b.next.RoundTrip(c)
}
