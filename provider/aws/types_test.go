package aws

import (
	"strings"
	"testing"

	sdkaws "github.com/aws/aws-sdk-go-v2/aws"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/i2kit/i2kit/provider/vm"
)

func TestAllowedType(t *testing.T) {
	for _, tc := range []struct {
		allowed []string
		name    string
		want    bool
	}{
		{[]string{"t3"}, "t3.large", true},
		{[]string{"t3"}, "t3a.large", false},
		{[]string{"m6i.large"}, "m6i.large", true},
		{[]string{"m6i.large"}, "m6i.xlarge", false},
		{[]string{"m7i-flex"}, "m7i-flex.large", true},
		{[]string{"m7i"}, "m7i-flex.large", false},
		{nil, "t3.large", false},
	} {
		if got := allowedType(tc.allowed, tc.name); got != tc.want {
			t.Errorf("allowedType(%v, %s) = %v", tc.allowed, tc.name, got)
		}
	}
}

func TestTypeFromInfo(t *testing.T) {
	info := func(edit func(*ec2types.InstanceTypeInfo)) ec2types.InstanceTypeInfo {
		i := ec2types.InstanceTypeInfo{InstanceType: "m6i.large", VCpuInfo: &ec2types.VCpuInfo{DefaultVCpus: sdkaws.Int32(2)},
			MemoryInfo:         &ec2types.MemoryInfo{SizeInMiB: sdkaws.Int64(8192)},
			ProcessorInfo:      &ec2types.ProcessorInfo{SupportedArchitectures: []ec2types.ArchitectureType{"x86_64"}},
			SupportedBootModes: []ec2types.BootModeType{"legacy-bios", "uefi"}, BareMetal: sdkaws.Bool(false)}
		if edit != nil {
			edit(&i)
		}
		return i
	}
	for _, tc := range []struct {
		name string
		info ec2types.InstanceTypeInfo
		ok   bool
	}{
		{"x86_64 UEFI", info(nil), true},
		{"no boot modes listed (an emulator)", info(func(i *ec2types.InstanceTypeInfo) { i.SupportedBootModes = nil }), true},
		{"BIOS only", info(func(i *ec2types.InstanceTypeInfo) { i.SupportedBootModes = []ec2types.BootModeType{"legacy-bios"} }), false},
		{"arm64", info(func(i *ec2types.InstanceTypeInfo) {
			i.ProcessorInfo.SupportedArchitectures = []ec2types.ArchitectureType{"arm64"}
		}), false},
		{"bare metal", info(func(i *ec2types.InstanceTypeInfo) { i.BareMetal = sdkaws.Bool(true) }), false},
		{"no memory", info(func(i *ec2types.InstanceTypeInfo) { i.MemoryInfo = nil }), false},
	} {
		got, ok := typeFromInfo(tc.info)
		if ok != tc.ok {
			t.Errorf("%s: ok = %v", tc.name, ok)
		}
		if ok && (got != instanceType{Name: "m6i.large", VCPUs: 2, MemoryMiB: 8192, Price: 0.096}) {
			t.Errorf("%s: %+v", tc.name, got)
		}
	}
}

func TestSortTypes(t *testing.T) {
	ts := []instanceType{
		{Name: "x2.large", VCPUs: 2, MemoryMiB: 16384}, {Name: "m6i.large", VCPUs: 2, MemoryMiB: 8192, Price: 0.096},
		{Name: "x1.large", VCPUs: 2, MemoryMiB: 8192}, {Name: "t3.nano", VCPUs: 2, MemoryMiB: 512, Price: 0.0052},
		{Name: "m5.large", VCPUs: 2, MemoryMiB: 8192, Price: 0.096}, {Name: "x0.xlarge", VCPUs: 4, MemoryMiB: 4096},
	}
	sortTypes(ts)
	if got := typeNames(ts, 10); got != "t3.nano, m5.large, m6i.large, x1.large, x2.large, x0.xlarge" {
		t.Errorf("order: %s; want known prices first, cheapest first, then by vCPUs and memory", got)
	}
}

func TestPriceTable(t *testing.T) {
	for name, price := range onDemandPrices {
		if !instanceTypeName.MatchString(name) || !strings.Contains(name, ".") || price <= 0 || price > 10 {
			t.Errorf("%s: %v", name, price)
		}
	}
	for _, fam := range DefaultInstanceTypes {
		if _, ok := onDemandPrices[fam+".large"]; !ok {
			t.Errorf("the default family %s has no price", fam)
		}
	}
}

func TestChooseTypes(t *testing.T) {
	ts := []instanceType{
		{Name: "t3.nano", VCPUs: 2, MemoryMiB: 512, Price: 0.0052}, {Name: "t3.micro", VCPUs: 2, MemoryMiB: 1024, Price: 0.0104},
		{Name: "t3.small", VCPUs: 2, MemoryMiB: 2048, Price: 0.0208}, {Name: "m6i.large", VCPUs: 2, MemoryMiB: 8192, Price: 0.096},
		{Name: "m6i.xlarge", VCPUs: 4, MemoryMiB: 16384, Price: 0.192},
	}
	plan := func(mem, cpus int, typ string) vm.Plan {
		p := vm.Plan{MemoryMiB: mem, CPUs: cpus}
		if typ != "" {
			p.Annotations = map[string]string{AnnotationInstanceType: typ}
		}
		return p
	}
	for _, tc := range []struct {
		name string
		plan vm.Plan
		want string // the types in order, or the error's words
	}{
		{"the smallest pod", plan(128, 1, ""), "t3.nano, t3.micro, t3.small, m6i.large, m6i.xlarge"},
		{"exactly t3.nano with the overhead", plan(512-guestOverheadMiB, 1, ""), "t3.nano, t3.micro"},
		{"a MiB more", plan(512-guestOverheadMiB+1, 1, ""), "t3.micro, t3.small"},
		{"no CPU counted as one", plan(128, 0, ""), "t3.nano"},
		{"4 vCPUs", plan(1024, 4, ""), "m6i.xlarge"},
		{"3 vCPUs", plan(1024, 3, ""), "m6i.xlarge"},
		{"the annotation", plan(128, 1, "m6i.large"), "m6i.large"},
		{"the annotation naming a type not allowed", plan(128, 1, "c7i.large"),
			`error: instance type "c7i.large" (annotation i2kit.io/instance-type) is not allowed on this node; allowed: t3.nano, t3.micro`},
		{"the annotation naming a type too small", plan(1024, 1, "t3.micro"),
			"error: instance type t3.micro (annotation i2kit.io/instance-type) has 2 vCPUs and 1024 MiB; the pod needs 1 vCPUs and 1280 MiB"},
		{"nothing fits", plan(32768, 2, ""), "error: no allowed instance type has 2 vCPUs and 33024 MiB (256 MiB of it for the guest); the largest is m6i.xlarge with 4 vCPUs and 16384 MiB"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := chooseTypes(ts, tc.plan)
			if err != nil {
				if msg := "error: " + err.Error(); !strings.HasPrefix(msg, tc.want) {
					t.Errorf("%s\nwant %s", msg, tc.want)
				}
				return
			}
			if names := typeNames(got, 10); !strings.HasPrefix(names, tc.want) || strings.HasPrefix(tc.want, "error") {
				t.Errorf("chose %s, want %s first", names, tc.want)
			}
		})
	}
}

func TestInstanceTags(t *testing.T) {
	cfg := testConfig()
	long := strings.Repeat("n", 253)
	for _, tc := range []struct {
		name string
		plan vm.Plan
		want map[string]string
	}{
		{"a pod", vm.Plan{UID: "u1", Namespace: "default", Name: "web", Tags: map[string]string{TagNode: "someone-else"}},
			map[string]string{TagCluster: "c1", TagNode: "n1", TagPodNamespace: "default", TagPodName: "web", TagPodUID: "u1",
				TagName: "default/web", "team": "infra"}},
		{"opted in to the metadata service", vm.Plan{UID: "u1", Namespace: "ns", Name: "p", Annotations: map[string]string{AnnotationInstanceMetadata: "enabled"}},
			map[string]string{TagCluster: "c1", TagNode: "n1", TagPodNamespace: "ns", TagPodName: "p", TagPodUID: "u1",
				TagName: "ns/p", "team": "infra", tagInstanceMetadata: "enabled"}},
		{"a name longer than a tag value", vm.Plan{UID: "u1", Namespace: strings.Repeat("s", 63), Name: long},
			map[string]string{TagCluster: "c1", TagNode: "n1", TagPodNamespace: strings.Repeat("s", 63), TagPodName: long, TagPodUID: "u1",
				TagName: (strings.Repeat("s", 63) + "/" + long)[:256], "team": "infra"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tags := instanceTags(cfg, tc.plan)
			if len(tags) != len(tc.want) {
				t.Errorf("%d tags, want %d", len(tags), len(tc.want))
			}
			for i, tg := range tags {
				if tc.want[*tg.Key] != *tg.Value {
					t.Errorf("tag %s = %q, want %q", *tg.Key, *tg.Value, tc.want[*tg.Key])
				}
				if i > 0 && *tags[i-1].Key >= *tg.Key {
					t.Errorf("tags not in order: %s before %s", *tags[i-1].Key, *tg.Key)
				}
				if len(*tg.Value) > 256 {
					t.Errorf("tag %s has %d characters", *tg.Key, len(*tg.Value))
				}
			}
		})
	}
}

func TestClientToken(t *testing.T) {
	a := clientToken("0d6f8a0e-1b7c-4f7e-9a51-2f0e7c3d9b11", candidate{"m6i.large", "subnet-0123456789abcdef0"})
	if len(a) > 64 || a != clientToken("0d6f8a0e-1b7c-4f7e-9a51-2f0e7c3d9b11", candidate{"m6i.large", "subnet-0123456789abcdef0"}) {
		t.Errorf("token %q (%d characters) is not stable, or too long", a, len(a))
	}
	for _, other := range []string{
		clientToken("0d6f8a0e-1b7c-4f7e-9a51-2f0e7c3d9b12", candidate{"m6i.large", "subnet-0123456789abcdef0"}),
		clientToken("0d6f8a0e-1b7c-4f7e-9a51-2f0e7c3d9b11", candidate{"m6i.xlarge", "subnet-0123456789abcdef0"}),
		clientToken("0d6f8a0e-1b7c-4f7e-9a51-2f0e7c3d9b11", candidate{"m6i.large", "subnet-0123456789abcdef1"}),
	} {
		if other == a {
			t.Errorf("two launches share the token %s", a)
		}
	}
}
