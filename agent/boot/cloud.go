package boot

import (
	"bufio"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// On a cloud instance (the aws backend) the agent has no kernel command line from the host and no private channel:
// it reads its configuration from the instance metadata service's user-data, and serves the protocol over mutually
// authenticated TLS on the instance's private address. User-data is readable by anyone allowed
// ec2:DescribeInstanceAttribute, so it carries public material only.

// CloudConfig set as ConfigParam (i2kit.config=imds) on the kernel command line makes the agent read UserData from the
// instance metadata service (IMDSv2) at boot.
const CloudConfig = "imds"

// MaxUserData bounds what the agent reads as user-data (EC2's own limit is 16 KiB).
const MaxUserData = 16 << 10

// UserData is the instance's user-data as the backend writes it (JSON).
type UserData struct {
	// Version of this format: UserDataVersion.
	Version int `json:"version"`
	// Hostname is the pod's name, the containers' hostname.
	Hostname string `json:"hostname"`
	// AgentPort is the TCP port the agent serves the protocol on, with TLS.
	AgentPort int `json:"agentPort"`
	// NodeCA is the PEM certificate of the node's own CA: the agent accepts only clients with a certificate it
	// signed.
	NodeCA string `json:"nodeCA"`
	// KeepMetadata leaves the instance metadata service reachable from the containers (a pod's opt-in).
	KeepMetadata bool `json:"keepMetadata,omitempty"`
}

// UserDataVersion is the version of UserData this agent understands.
const UserDataVersion = 1

// ParseUserData decodes user-data strictly: unknown fields, another version or missing fields are errors.
func ParseUserData(raw []byte) (UserData, error) {
	var u UserData
	if len(raw) > MaxUserData {
		return u, fmt.Errorf("user-data: %d bytes, at most %d", len(raw), MaxUserData)
	}
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&u); err != nil {
		return u, fmt.Errorf("decoding user-data, %w", err)
	}
	if dec.More() {
		return u, errors.New("user-data: data after the JSON object")
	}
	switch {
	case u.Version != UserDataVersion:
		return u, fmt.Errorf("user-data: version %d, this agent reads version %d", u.Version, UserDataVersion)
	case u.AgentPort <= 0 || u.AgentPort > 65535:
		return u, fmt.Errorf("user-data: agentPort %d out of range", u.AgentPort)
	case u.NodeCA == "":
		return u, errors.New("user-data: nodeCA is missing")
	}
	return u, nil
}

// KeyMarker starts the console line on which the agent prints the fingerprint of the TLS key it made at boot:
// "I2KIT_AGENT_KEY sha256:<hex>". The node reads the instance's console through the cloud's authenticated API
// and pins that key: the agent's identity never travels in user-data.
const KeyMarker = "I2KIT_AGENT_KEY"

// KeyFingerprint is the SHA-256 of a certificate's public key (SubjectPublicKeyInfo), "sha256:<hex>".
func KeyFingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// KeyLine is the console line that announces a key fingerprint.
func KeyLine(fingerprint string) string { return KeyMarker + " " + fingerprint }

// FirstKeyLine returns the fingerprint of the first well-formed key line in a console's output: the agent prints
// it before any container runs, so a later line (a workload writing to the console) cannot replace it. It reads
// at most limit bytes.
func FirstKeyLine(console io.Reader, limit int64) (string, bool) {
	sc := bufio.NewScanner(io.LimitReader(console, limit))
	sc.Buffer(make([]byte, 0, 4096), 64<<10)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		// The line may follow kernel messages on the same line of a shared console.
		for i := 0; i+1 < len(f); i++ {
			if f[i] == KeyMarker && validFingerprint(f[i+1]) {
				return f[i+1], true
			}
		}
	}
	return "", false
}

func validFingerprint(s string) bool {
	h, ok := strings.CutPrefix(s, "sha256:")
	if !ok || len(h) != 64 {
		return false
	}
	_, err := hex.DecodeString(h)
	return err == nil
}
