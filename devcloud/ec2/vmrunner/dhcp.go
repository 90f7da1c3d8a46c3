package vmrunner

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"time"
)

// DHCP, the little of RFC 2131 that the guest kernel's ip=dhcp needs: DISCOVER is answered with an OFFER and
// REQUEST with an ACK (or a NAK when it asks for another address), each carrying the one address the instance was
// given at launch, found by its MAC address. Clients the runner does not know get no answer.

const (
	dhcpServerPort = 67
	dhcpClientPort = 68

	bootRequest = 1
	bootReply   = 2

	dhcpDiscover = 1
	dhcpOffer    = 2
	dhcpRequest  = 3
	dhcpAck      = 5
	dhcpNak      = 6

	optPad         = 0
	optSubnetMask  = 1
	optRouter      = 3
	optHostname    = 12
	optRequestedIP = 50
	optLeaseTime   = 51
	optMessageType = 53
	optServerID    = 54
	optEnd         = 255

	// dhcpFixedLen is the BOOTP header up to and including the magic cookie.
	dhcpFixedLen = 240
	// dhcpMinReply pads replies to BOOTP's minimum message size, which some clients insist on.
	dhcpMinReply = 300
	// maxDHCPPacket bounds what the server reads: one Ethernet frame's payload.
	maxDHCPPacket = 1500
)

var dhcpMagic = []byte{99, 130, 83, 99}

// dhcpMessage is the part of a client's message the server reads.
type dhcpMessage struct {
	Op        byte
	XID       uint32
	Flags     uint16
	CIAddr    net.IP
	GIAddr    net.IP
	CHAddr    net.HardwareAddr
	Type      byte
	Requested net.IP // option 50, nil when absent
	ServerID  net.IP // option 54, nil when absent
}

// parseDHCP decodes a client's message. Everything is bounds-checked: the guest is not trusted.
func parseDHCP(b []byte) (dhcpMessage, error) {
	var m dhcpMessage
	if len(b) < dhcpFixedLen {
		return m, fmt.Errorf("a DHCP message of %d bytes, shorter than its header", len(b))
	}
	if b[1] != 1 || b[2] != 6 {
		return m, fmt.Errorf("hardware type %d length %d: not Ethernet", b[1], b[2])
	}
	if !bytes.Equal(b[236:240], dhcpMagic) {
		return m, errors.New("no DHCP magic cookie")
	}
	m.Op = b[0]
	m.XID = binary.BigEndian.Uint32(b[4:8])
	m.Flags = binary.BigEndian.Uint16(b[10:12])
	m.CIAddr = net.IP(bytes.Clone(b[12:16]))
	m.GIAddr = net.IP(bytes.Clone(b[24:28]))
	m.CHAddr = net.HardwareAddr(bytes.Clone(b[28:34]))
	opts := b[dhcpFixedLen:]
	for i := 0; i < len(opts); {
		code := opts[i]
		if code == optEnd {
			break
		}
		if code == optPad {
			i++
			continue
		}
		if i+1 >= len(opts) || i+2+int(opts[i+1]) > len(opts) {
			return m, fmt.Errorf("option %d runs past the message", code)
		}
		v := opts[i+2 : i+2+int(opts[i+1])]
		switch code {
		case optMessageType:
			if len(v) == 1 {
				m.Type = v[0]
			}
		case optRequestedIP:
			if len(v) == 4 {
				m.Requested = net.IP(bytes.Clone(v))
			}
		case optServerID:
			if len(v) == 4 {
				m.ServerID = net.IP(bytes.Clone(v))
			}
		}
		i += 2 + len(v)
	}
	if m.Op != bootRequest || m.Type == 0 {
		return m, fmt.Errorf("op %d message type %d: not a DHCP request", m.Op, m.Type)
	}
	return m, nil
}

// dhcpLease is what one instance is told.
type dhcpLease struct {
	IP       net.IP
	Mask     net.IPMask
	Router   net.IP
	Hostname string
	Time     time.Duration
}

// dhcpAnswer returns the reply to req from the server at serverID for the client's lease, or ok false when the
// server stays silent (a message it does not answer, a REQUEST meant for another server).
func dhcpAnswer(req dhcpMessage, serverID net.IP, lease dhcpLease) (reply []byte, ok bool) {
	var typ byte
	switch req.Type {
	case dhcpDiscover:
		typ = dhcpOffer
	case dhcpRequest:
		if req.ServerID != nil && !req.ServerID.Equal(serverID) {
			return nil, false // the client chose another server's offer
		}
		want := req.Requested
		if want == nil && !req.CIAddr.IsUnspecified() {
			want = req.CIAddr // renewing
		}
		typ = dhcpAck
		if want != nil && !want.Equal(lease.IP) {
			typ = dhcpNak
		}
	default: // RELEASE, DECLINE, INFORM: the address is the instance's for its life whatever the client says
		return nil, false
	}
	b := make([]byte, dhcpFixedLen, dhcpMinReply)
	b[0], b[1], b[2] = bootReply, 1, 6
	binary.BigEndian.PutUint32(b[4:8], req.XID)
	binary.BigEndian.PutUint16(b[10:12], req.Flags)
	if typ != dhcpNak {
		copy(b[16:20], lease.IP.To4())
		copy(b[20:24], serverID.To4())
	}
	copy(b[24:28], req.GIAddr.To4())
	copy(b[28:34], req.CHAddr)
	copy(b[236:240], dhcpMagic)
	b = append(b, optMessageType, 1, typ)
	b = append(b, optServerID, 4)
	b = append(b, serverID.To4()...)
	if typ != dhcpNak {
		secs := make([]byte, 4)
		binary.BigEndian.PutUint32(secs, uint32(lease.Time/time.Second))
		b = append(b, optLeaseTime, 4)
		b = append(b, secs...)
		b = append(b, optSubnetMask, 4)
		b = append(b, lease.Mask...)
		b = append(b, optRouter, 4)
		b = append(b, lease.Router.To4()...)
		if h := lease.Hostname; h != "" && len(h) <= 255 {
			b = append(b, optHostname, byte(len(h)))
			b = append(b, h...)
		}
	}
	b = append(b, optEnd)
	for len(b) < dhcpMinReply {
		b = append(b, optPad)
	}
	return b, true
}
