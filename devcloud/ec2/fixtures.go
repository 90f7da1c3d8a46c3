package ec2

import (
	"slices"
	"strconv"
)

// Subnet is a network fixture: instances launched into it take private IPs from CIDR.
type Subnet struct {
	ID               string
	VpcID            string
	CIDR             string // IPv4, e.g. "10.0.1.0/24"
	AvailabilityZone string
	Tags             []Tag
}

// SecurityGroup is a network fixture.
type SecurityGroup struct {
	ID          string
	Name        string
	Description string
	VpcID       string
	Tags        []Tag
}

// InstanceType is one entry of the DescribeInstanceTypes fixture, with the fields a scheduler sizes pods by.
type InstanceType struct {
	Name          string
	VCPUs         int
	MemoryMiB     int64
	Architectures []string // "x86_64", "arm64"
	BootModes     []string // "legacy-bios", "uefi"
	Burstable     bool
	Network       string // NetworkPerformance, e.g. "Up to 12.5 Gigabit"
	ClockGHz      float64
}

// DefaultVpcID is the VPC of the default fixtures.
const DefaultVpcID = "vpc-0d1e2f3a4b5c60000"

// DefaultSubnets are two subnets of DefaultVpcID in two availability zones.
func DefaultSubnets() []Subnet {
	return []Subnet{
		{ID: "subnet-0d1e2f3a4b5c60001", VpcID: DefaultVpcID, CIDR: "10.0.1.0/24", AvailabilityZone: "us-east-1a",
			Tags: []Tag{{Key: "Name", Value: "devcloud-a"}}},
		{ID: "subnet-0d1e2f3a4b5c60002", VpcID: DefaultVpcID, CIDR: "10.0.2.0/24", AvailabilityZone: "us-east-1b",
			Tags: []Tag{{Key: "Name", Value: "devcloud-b"}}},
	}
}

// DefaultSecurityGroups is the VPC's default group.
func DefaultSecurityGroups() []SecurityGroup {
	return []SecurityGroup{
		{ID: "sg-0d1e2f3a4b5c60001", Name: "default", Description: "default VPC security group", VpcID: DefaultVpcID},
	}
}

// DefaultInstanceTypes are fifteen real current-generation types (t3, m6i, c6i, r6i) with their published vCPU
// and memory sizes; every one is Nitro, ENA-required, x86_64, and boots legacy-bios or UEFI.
func DefaultInstanceTypes() []InstanceType {
	t := func(name string, vcpus int, gib int64, burst bool, net string, ghz float64) InstanceType {
		return InstanceType{Name: name, VCPUs: vcpus, MemoryMiB: gib * 1024, Architectures: []string{"x86_64"},
			BootModes: []string{"legacy-bios", "uefi"}, Burstable: burst, Network: net, ClockGHz: ghz}
	}
	nano := t("t3.nano", 2, 0, true, "Up to 5 Gigabit", 2.5)
	nano.MemoryMiB = 512
	return []InstanceType{
		nano,
		t("t3.micro", 2, 1, true, "Up to 5 Gigabit", 2.5),
		t("t3.small", 2, 2, true, "Up to 5 Gigabit", 2.5),
		t("t3.medium", 2, 4, true, "Up to 5 Gigabit", 2.5),
		t("t3.large", 2, 8, true, "Up to 5 Gigabit", 2.5),
		t("t3.xlarge", 4, 16, true, "Up to 5 Gigabit", 2.5),
		t("m6i.large", 2, 8, false, "Up to 12.5 Gigabit", 3.5),
		t("m6i.xlarge", 4, 16, false, "Up to 12.5 Gigabit", 3.5),
		t("m6i.2xlarge", 8, 32, false, "Up to 12.5 Gigabit", 3.5),
		t("c6i.large", 2, 4, false, "Up to 12.5 Gigabit", 3.5),
		t("c6i.xlarge", 4, 8, false, "Up to 12.5 Gigabit", 3.5),
		t("c6i.2xlarge", 8, 16, false, "Up to 12.5 Gigabit", 3.5),
		t("r6i.large", 2, 16, false, "Up to 12.5 Gigabit", 3.5),
		t("r6i.xlarge", 4, 32, false, "Up to 12.5 Gigabit", 3.5),
		t("r6i.2xlarge", 8, 64, false, "Up to 12.5 Gigabit", 3.5),
	}
}

type instanceTypeXML struct {
	InstanceType          string   `xml:"instanceType"`
	CurrentGeneration     bool     `xml:"currentGeneration"`
	FreeTierEligible      bool     `xml:"freeTierEligible"`
	BareMetal             bool     `xml:"bareMetal"`
	Hypervisor            string   `xml:"hypervisor"`
	Burstable             bool     `xml:"burstablePerformanceSupported"`
	SupportedUsageClasses []string `xml:"supportedUsageClasses>item"`
	RootDeviceTypes       []string `xml:"supportedRootDeviceTypes>item"`
	VirtualizationTypes   []string `xml:"supportedVirtualizationTypes>item"`
	BootModes             []string `xml:"supportedBootModes>item"`
	Processor             struct {
		Architectures []string `xml:"supportedArchitectures>item"`
		ClockGHz      float64  `xml:"sustainedClockSpeedInGhz"`
		Manufacturer  string   `xml:"manufacturer"`
	} `xml:"processorInfo"`
	VCPU struct {
		DefaultVCpus          int `xml:"defaultVCpus"`
		DefaultCores          int `xml:"defaultCores"`
		DefaultThreadsPerCore int `xml:"defaultThreadsPerCore"`
	} `xml:"vCpuInfo"`
	MemoryMiB int64 `xml:"memoryInfo>sizeInMiB"`
	Network   struct {
		Performance          string `xml:"networkPerformance"`
		MaxInterfaces        int    `xml:"maximumNetworkInterfaces"`
		IPv4PerInterface     int    `xml:"ipv4AddressesPerInterface"`
		EnaSupport           string `xml:"enaSupport"`
		EfaSupported         bool   `xml:"efaSupported"`
		EncryptionInTransit  bool   `xml:"encryptionInTransitSupported"`
		DefaultNetworkCardIx int    `xml:"defaultNetworkCardIndex"`
	} `xml:"networkInfo"`
	EbsOptimizedSupport string `xml:"ebsInfo>ebsOptimizedSupport"`
	NvmeSupport         string `xml:"ebsInfo>nvmeSupport"`
	NitroTpmSupport     string `xml:"nitroTpmSupport"`
}

func (t InstanceType) xml() instanceTypeXML {
	x := instanceTypeXML{InstanceType: t.Name, CurrentGeneration: true, FreeTierEligible: t.Name == "t3.micro",
		Hypervisor: "nitro", Burstable: t.Burstable, SupportedUsageClasses: []string{"on-demand", "spot"},
		RootDeviceTypes: []string{"ebs"}, VirtualizationTypes: []string{"hvm"}, BootModes: t.BootModes,
		MemoryMiB: t.MemoryMiB, EbsOptimizedSupport: "default", NvmeSupport: "required", NitroTpmSupport: "supported"}
	x.Processor.Architectures = t.Architectures
	x.Processor.ClockGHz = t.ClockGHz
	x.Processor.Manufacturer = "Intel"
	x.VCPU.DefaultVCpus = t.VCPUs
	x.VCPU.DefaultCores = max(t.VCPUs/2, 1)
	x.VCPU.DefaultThreadsPerCore = 2
	x.Network.Performance = t.Network
	x.Network.MaxInterfaces = min(2+t.VCPUs/2, 4)
	x.Network.IPv4PerInterface = 4 * x.Network.MaxInterfaces
	x.Network.EnaSupport = "required"
	x.Network.EncryptionInTransit = !t.Burstable
	return x
}

type describeInstanceTypesResponse struct {
	reply
	Types     []instanceTypeXML `xml:"instanceTypeSet>item"`
	NextToken string            `xml:"nextToken,omitempty"`
}

// describeInstanceTypes answers from the fixture, in its order; unknown requested types are
// InvalidInstanceType as on EC2.
func (s *Server) describeInstanceTypes(q params) (any, error) {
	fs, err := q.filters("instance-type", "current-generation", "vcpu-info.default-vcpus", "memory-info.size-in-mib",
		"processor-info.supported-architecture", "supported-boot-mode", "burstable-performance-supported")
	if err != nil {
		return nil, err
	}
	want := q.list("InstanceType")
	for _, name := range want {
		if _, ok := s.types[name]; !ok {
			return nil, errCode("InvalidInstanceType", "The following supplied instance types do not exist: [%s]", name)
		}
	}
	type entry struct {
		i int
		t InstanceType
	}
	var match []entry
	for i, t := range s.typeList {
		if len(want) > 0 && !slices.Contains(want, t.Name) {
			continue
		}
		ok := matchAll(fs, nil, func(name string) []string {
			switch name {
			case "instance-type":
				return []string{t.Name}
			case "current-generation":
				return []string{"true"}
			case "vcpu-info.default-vcpus":
				return []string{strconv.Itoa(t.VCPUs)}
			case "memory-info.size-in-mib":
				return []string{strconv.FormatInt(t.MemoryMiB, 10)}
			case "processor-info.supported-architecture":
				return t.Architectures
			case "supported-boot-mode":
				return t.BootModes
			case "burstable-performance-supported":
				return []string{strconv.FormatBool(t.Burstable)}
			}
			return nil
		})
		if ok {
			match = append(match, entry{i, t})
		}
	}
	got, next, err := page(q, match, func(e entry) int64 { return int64(e.i) }, 5, 100)
	if err != nil {
		return nil, err
	}
	out := &describeInstanceTypesResponse{NextToken: next}
	for _, e := range got {
		out.Types = append(out.Types, e.t.xml())
	}
	return out, nil
}
