package protocol

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
)

// MaxRootfsBytes bounds the tar stream of an ephemeral container's root filesystem (headers and contents): the
// host refuses to send more and the agent to read more. The filesystem lives in the VM's memory.
const MaxRootfsBytes = 512 << 20

// maxRootfs is MaxRootfsBytes; tests lower it.
var maxRootfs int64 = MaxRootfsBytes

// maxEphemeralConfig bounds the JSON line that precedes the tar stream in an AddEphemeral request.
const maxEphemeralConfig = 1 << 20

// EphemeralContainer is an ephemeral container added to a running pod (kubectl debug): its runtime configuration
// (as a PodSpec's containers', with Mounts, Security and TTY; the API gives it no probes, hooks or limits), what its
// image's configuration says, and the container whose PID namespace it joins. It is never restarted.
type EphemeralContainer struct {
	ContainerConfig
	Image ImageConfig `json:"image"`
	// TargetContainerName, when set, names a container of the pod whose PID namespace the container joins: it
	// sees and may signal that container's processes.
	TargetContainerName string `json:"targetContainerName,omitempty"`
}

// ImageConfig is what a container image's configuration says of how to run it.
type ImageConfig struct {
	Entrypoint []string `json:"entrypoint,omitempty"`
	Cmd        []string `json:"cmd,omitempty"`
	Env        []string `json:"env,omitempty"`
	WorkingDir string   `json:"workingDir,omitempty"`
	User       string   `json:"user,omitempty"`
}

// ErrUnsupported is matched (errors.Is) by the error of a call that the agent does not know: an agent of an
// older build, which answers a route added within this Version with its router's 404.
var ErrUnsupported = errors.New("the pod's agent does not support this call; its VM was built by an older node")

// ErrRootfsTooLarge is matched by the error of an AddEphemeral whose root filesystem is over MaxRootfsBytes.
var ErrRootfsTooLarge = fmt.Errorf("the root filesystem is larger than %d bytes", MaxRootfsBytes)

// AddEphemeral adds an ephemeral container to the running pod: the agent unpacks rootfs, an uncompressed tar of
// the container's flattened root filesystem (no whiteouts, no device nodes) into the VM's memory, answers once
// it did (or could not), and starts the container; its status follows in PodStatus, marked Ephemeral. The request
// streams rootfs (one JSON line of ec, then the tar) and fails with ErrRootfsTooLarge past MaxRootfsBytes. The
// body is sent only once the agent asks for it (Expect: 100-continue): an agent without the route answers 404
// at once, which fails with ErrUnsupported, and reads nothing.
func (c *Client) AddEphemeral(ctx context.Context, ec EphemeralContainer, rootfs io.Reader) error {
	line, err := json.Marshal(ec)
	if err != nil {
		return err
	}
	if len(line) >= maxEphemeralConfig {
		return fmt.Errorf("adding ephemeral container %s, its configuration is over %d bytes", ec.Name, maxEphemeralConfig)
	}
	body := io.MultiReader(bytes.NewReader(append(line, '\n')), &boundedRootfs{r: rootfs, left: maxRootfs})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://agent/v1/ephemeral", io.NopCloser(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-tar")
	req.Header.Set("Expect", "100-continue")
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("adding ephemeral container %s, %w", ec.Name, err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusMethodNotAllowed:
		return fmt.Errorf("adding ephemeral container %s, %w", ec.Name, ErrUnsupported)
	case resp.StatusCode >= 300:
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		return fmt.Errorf("adding ephemeral container %s, %w", ec.Name, &RemoteError{Status: resp.StatusCode, Message: string(bytes.TrimSpace(msg))})
	}
	return nil
}

// boundedRootfs passes a root filesystem's stream on and fails with ErrRootfsTooLarge once it is over the bound.
type boundedRootfs struct {
	r    io.Reader
	left int64
}

func (b *boundedRootfs) Read(p []byte) (int, error) {
	if int64(len(p)) > b.left+1 {
		p = p[:b.left+1]
	}
	n, err := b.r.Read(p)
	if b.left -= int64(n); b.left < 0 {
		return 0, ErrRootfsTooLarge
	}
	return n, err
}

// ReadEphemeral reads an AddEphemeral request's body on the agent's side: the container's configuration, and
// the stream of its root filesystem's tar, which fails with ErrRootfsTooLarge past MaxRootfsBytes. A
// configuration line over its bound fails with ErrOverLimit.
func ReadEphemeral(body io.Reader) (EphemeralContainer, io.Reader, error) {
	br := bufio.NewReaderSize(body, 64<<10)
	line, err := readBoundedLine(br, maxEphemeralConfig)
	if err != nil {
		return EphemeralContainer{}, nil, fmt.Errorf("reading the ephemeral container's configuration, %w", err)
	}
	var ec EphemeralContainer
	if err := json.Unmarshal(line, &ec); err != nil {
		return EphemeralContainer{}, nil, fmt.Errorf("decoding the ephemeral container's configuration, %w", err)
	}
	if ec.Name == "" {
		return EphemeralContainer{}, nil, errors.New("an ephemeral container needs a name")
	}
	return ec, &boundedRootfs{r: br, left: maxRootfs}, nil
}
