package provider

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	utilexec "k8s.io/utils/exec"

	"github.com/i2kit/i2kit/agent/protocol"
)

func containerErr(err error, namespace, pod, container string) error {
	if protocol.IsNotFound(err) {
		return errdefs.NotFoundf("container %s is not in pod %s/%s", container, namespace, pod)
	}
	var re *protocol.RemoteError
	if errors.As(err, &re) {
		return errdefs.InvalidInput(re.Message)
	}
	return err
}

// GetContainerLogs returns a container's log as kubectl logs asks for it.
func (p *Provider) GetContainerLogs(ctx context.Context, namespace, podName, container string, opts api.ContainerLogOpts) (io.ReadCloser, error) {
	c, err := p.client(ctx, namespace, podName, 10*time.Second)
	if err != nil {
		return nil, err
	}
	o := protocol.LogOptions{Container: container, Follow: opts.Follow, Previous: opts.Previous,
		Timestamps: opts.Timestamps, Tail: opts.Tail, SinceTime: opts.SinceTime, LimitBytes: int64(opts.LimitBytes)}
	if o.Tail == 0 {
		o.Tail = -1 // virtual-kubelet's zero value: no tail was asked for
	}
	if opts.SinceSeconds > 0 {
		o.SinceTime = time.Now().Add(-time.Duration(opts.SinceSeconds) * time.Second)
	}
	rc, err := c.Logs(ctx, o)
	if err != nil {
		return nil, containerErr(err, namespace, podName, container)
	}
	return rc, nil
}

// RunInContainer runs a command in a container, as kubectl exec does; a non-zero exit reaches kubectl as such.
func (p *Provider) RunInContainer(ctx context.Context, namespace, podName, container string, cmd []string, attach api.AttachIO) error {
	c, err := p.client(ctx, namespace, podName, 10*time.Second)
	if err != nil {
		return err
	}
	s, closeOut := streams(attach)
	defer closeOut()
	code, err := c.Exec(ctx, protocol.ExecRequest{Container: container, Command: cmd, Stdin: attach.Stdin() != nil, TTY: attach.TTY()}, s)
	return exitErr(code, containerErr(err, namespace, podName, container))
}

// AttachToContainer attaches to a container's main process, as kubectl attach does.
func (p *Provider) AttachToContainer(ctx context.Context, namespace, podName, container string, attach api.AttachIO) error {
	c, err := p.client(ctx, namespace, podName, 10*time.Second)
	if err != nil {
		return err
	}
	s, closeOut := streams(attach)
	defer closeOut()
	code, err := c.Attach(ctx, protocol.AttachRequest{Container: container, Stdin: attach.Stdin() != nil, TTY: attach.TTY()}, s)
	return exitErr(code, containerErr(err, namespace, podName, container))
}

// PortForward connects stream to a port of the pod, as kubectl port-forward does.
func (p *Provider) PortForward(ctx context.Context, namespace, podName string, port int32, stream io.ReadWriteCloser) error {
	defer stream.Close()
	c, err := p.client(ctx, namespace, podName, 10*time.Second)
	if err != nil {
		return err
	}
	if err := c.PortForward(ctx, int(port), stream); err != nil {
		return fmt.Errorf("forwarding port %d of pod %s/%s, %w", port, namespace, podName, containerErr(err, namespace, podName, ""))
	}
	return nil
}

func streams(attach api.AttachIO) (protocol.Streams, func()) {
	s := protocol.Streams{Stdin: attach.Stdin()}
	if w := attach.Stdout(); w != nil {
		s.Stdout = w
	}
	if w := attach.Stderr(); w != nil {
		s.Stderr = w
	}
	var stop chan struct{}
	if attach.TTY() {
		stop = make(chan struct{})
		rs := make(chan protocol.Resize)
		s.Resize = rs
		go func() {
			for {
				select {
				case sz := <-attach.Resize():
					select {
					case rs <- protocol.Resize{Width: sz.Width, Height: sz.Height}:
					case <-stop:
						return
					}
				case <-stop:
					return
				}
			}
		}()
	}
	return s, func() {
		if stop != nil {
			close(stop)
		}
		for _, w := range []io.WriteCloser{attach.Stdout(), attach.Stderr()} {
			if w != nil {
				w.Close()
			}
		}
	}
}

func exitErr(code int, err error) error {
	if err != nil {
		return err
	}
	if code != 0 {
		return utilexec.CodeExitError{Err: fmt.Errorf("command terminated with exit code %d", code), Code: code}
	}
	return nil
}
