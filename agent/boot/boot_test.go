package boot

import (
	"net"
	"testing"
)

func TestCmdline(t *testing.T) {
	for _, tc := range []struct {
		base string
		p    Params
		want string
	}{
		{"console=ttyS0 quiet", Params{}, "console=ttyS0 quiet"},
		{"console=ttyS0  quiet ", Params{Hostname: "web-1", Channel: true}, "console=ttyS0 quiet i2kit.config=channel i2kit.hostname=web-1"},
		{"", Params{Network: &Network{IP: net.IPv4(10, 88, 0, 2), Gateway: net.IPv4(10, 88, 0, 1), Mask: net.CIDRMask(16, 32)}},
			"ip=10.88.0.2::10.88.0.1:255.255.0.0::eth0:off"},
		{"console=ttyS0 quiet panic=-1", Params{Cloud: true, Channel: true, Network: &Network{IP: net.IPv4(10, 88, 0, 2)}},
			"console=ttyS0 quiet panic=-1 i2kit.config=imds ip=dhcp"},
	} {
		if got := Cmdline(tc.base, tc.p); got != tc.want {
			t.Errorf("Cmdline(%q, %+v) = %q, want %q", tc.base, tc.p, got, tc.want)
		}
	}
}

func TestFormatUUID(t *testing.T) {
	b := []byte{0x01, 0x23, 0xab, 0xcd, 0x45, 0x67, 0x89, 0xef, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef}
	if got := FormatUUID(b); got != "0123abcd-4567-89ef-0123-456789abcdef" {
		t.Errorf("FormatUUID = %s", got)
	}
}
