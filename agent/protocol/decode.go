package protocol

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// The host decodes an agent's answers with these: the lists in them are bounded while they are decoded (see
// MaxContainers), so that an answer of many tiny entries cannot make the host allocate a large entry for each.
// Each wire type embeds the exported one and shadows its lists (encoding/json takes the shallower field), so that
// a field added to PodStatus or Stats is decoded without a change here.

// decodeStatus decodes a PodStatus an agent sent.
func decodeStatus(b []byte) (PodStatus, error) {
	var w struct {
		PodStatus
		Containers boundedList[ContainerStatus] `json:"containers"`
	}
	w.Containers.max = MaxContainers
	if err := json.Unmarshal(b, &w); err != nil {
		return PodStatus{}, fmt.Errorf("decoding the pod's status, %w", err)
	}
	st := w.PodStatus
	st.Containers = w.Containers.items
	return st, nil
}

// decodeStats decodes a Stats an agent sent.
func decodeStats(b []byte) (Stats, error) {
	var w struct {
		Stats
		Network    boundedList[InterfaceStats] `json:"network"`
		Containers boundedList[ContainerStats] `json:"containers"`
	}
	w.Network.max, w.Containers.max = maxInterfaces, MaxContainers
	if err := json.Unmarshal(b, &w); err != nil {
		return Stats{}, fmt.Errorf("decoding the VM's stats, %w", err)
	}
	st := w.Stats
	st.Network, st.Containers = w.Network.items, w.Containers.items
	return st, nil
}

// boundedList decodes a JSON array (or null) of at most max items; more fail with ErrOverLimit.
type boundedList[T any] struct {
	items []T
	max   int
}

func (l *boundedList[T]) UnmarshalJSON(b []byte) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if tok == nil {
		l.items = nil
		return nil
	}
	if tok != json.Delim('[') {
		return fmt.Errorf("a list is %v", tok)
	}
	l.items = []T{} // as encoding/json decodes [], not nil
	for dec.More() {
		if len(l.items) == l.max {
			return fmt.Errorf("%w: a list of more than %d items", ErrOverLimit, l.max)
		}
		var v T
		if err := dec.Decode(&v); err != nil {
			return err
		}
		l.items = append(l.items, v)
	}
	_, err = dec.Token() // the closing bracket; json.Unmarshal has checked the array is well formed
	return err
}
