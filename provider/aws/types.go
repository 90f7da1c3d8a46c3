package aws

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/i2kit/i2kit/provider/vm"
)

// instanceType is an allowed instance type, as DescribeInstanceTypes describes it.
type instanceType struct {
	Name      string
	VCPUs     int
	MemoryMiB int
	// Price is the on-demand price in USD an hour (onDemandPrices), 0 when the table does not know the type.
	Price float64
}

// guestOverheadMiB is the memory an instance has on paper but a pod's VM cannot count on: what the firmware and
// the kernel reserve on a Nitro instance (a 1 GiB t3.micro's kernel sees about 950 MiB), plus room for the page
// cache of the image's erofs partitions, so that a pod sized to its limits does not thrash. Plan.MemoryMiB already
// counts the agent and the guest kernel's working memory (the provider's vmSize).
const guestOverheadMiB = 256

// onDemandPrices are Linux on-demand prices in us-east-1 (USD an hour), used only to order the types: other
// regions differ by a similar factor for every type, so the order holds. Types the table lacks come after those
// it has.
var onDemandPrices = map[string]float64{
	"t3.nano": 0.0052, "t3.micro": 0.0104, "t3.small": 0.0208, "t3.medium": 0.0416, "t3.large": 0.0832,
	"t3.xlarge": 0.1664, "t3.2xlarge": 0.3328,
	"t3a.nano": 0.0047, "t3a.micro": 0.0094, "t3a.small": 0.0188, "t3a.medium": 0.0376, "t3a.large": 0.0752,
	"t3a.xlarge": 0.1504, "t3a.2xlarge": 0.3008,
	"m5.large": 0.096, "m5.xlarge": 0.192, "m5.2xlarge": 0.384, "m5.4xlarge": 0.768, "m5.8xlarge": 1.536,
	"m6i.large": 0.096, "m6i.xlarge": 0.192, "m6i.2xlarge": 0.384, "m6i.4xlarge": 0.768, "m6i.8xlarge": 1.536,
	"m6i.12xlarge": 2.304, "m6i.16xlarge": 3.072,
	"m6a.large": 0.0864, "m6a.xlarge": 0.1728, "m6a.2xlarge": 0.3456, "m6a.4xlarge": 0.6912, "m6a.8xlarge": 1.3824,
	"m7i.large": 0.1008, "m7i.xlarge": 0.2016, "m7i.2xlarge": 0.4032, "m7i.4xlarge": 0.8064, "m7i.8xlarge": 1.6128,
	"m7i-flex.large": 0.09576, "m7i-flex.xlarge": 0.19152, "m7i-flex.2xlarge": 0.38304, "m7i-flex.4xlarge": 0.76608,
	"c5.large": 0.085, "c5.xlarge": 0.17, "c5.2xlarge": 0.34, "c5.4xlarge": 0.68,
	"c6i.large": 0.085, "c6i.xlarge": 0.17, "c6i.2xlarge": 0.34, "c6i.4xlarge": 0.68, "c6i.8xlarge": 1.36,
	"c6a.large": 0.0765, "c6a.xlarge": 0.153, "c6a.2xlarge": 0.306, "c6a.4xlarge": 0.612,
	"c7i.large": 0.08925, "c7i.xlarge": 0.1785, "c7i.2xlarge": 0.357, "c7i.4xlarge": 0.714, "c7i.8xlarge": 1.428,
	"r5.large": 0.126, "r5.xlarge": 0.252, "r5.2xlarge": 0.504, "r5.4xlarge": 1.008,
	"r6i.large": 0.126, "r6i.xlarge": 0.252, "r6i.2xlarge": 0.504, "r6i.4xlarge": 1.008, "r6i.8xlarge": 2.016,
	"r6a.large": 0.1134, "r6a.xlarge": 0.2268, "r6a.2xlarge": 0.4536, "r6a.4xlarge": 0.9072,
	"r7i.large": 0.1323, "r7i.xlarge": 0.2646, "r7i.2xlarge": 0.5292, "r7i.4xlarge": 1.0584, "r7i.8xlarge": 2.1168,
}

// allowedType reports whether the instance type name is in allowed, itself or by its family ("t3" allows
// "t3.large", not "t3a.large").
func allowedType(allowed []string, name string) bool {
	family, _, _ := strings.Cut(name, ".")
	return slices.Contains(allowed, name) || slices.Contains(allowed, family)
}

// typeFilter is the DescribeInstanceTypes filter value for an allowed entry: a family becomes a wildcard.
func typeFilter(entry string) string {
	if strings.Contains(entry, ".") {
		return entry
	}
	return entry + ".*"
}

// typeFromInfo is an instance type as DescribeInstanceTypes describes it, or false when a pod's VM cannot run on
// it: not x86_64, bare metal (slow to start, priced as the whole host), or without UEFI boot (the AMIs boot UEFI).
func typeFromInfo(info ec2types.InstanceTypeInfo) (instanceType, bool) {
	t := instanceType{Name: string(info.InstanceType), Price: onDemandPrices[string(info.InstanceType)]}
	if info.VCpuInfo != nil && info.VCpuInfo.DefaultVCpus != nil {
		t.VCPUs = int(*info.VCpuInfo.DefaultVCpus)
	}
	if info.MemoryInfo != nil && info.MemoryInfo.SizeInMiB != nil {
		t.MemoryMiB = int(*info.MemoryInfo.SizeInMiB)
	}
	if t.Name == "" || t.VCPUs <= 0 || t.MemoryMiB <= 0 || (info.BareMetal != nil && *info.BareMetal) {
		return t, false
	}
	if info.ProcessorInfo == nil || !slices.Contains(info.ProcessorInfo.SupportedArchitectures, ec2types.ArchitectureTypeX8664) {
		return t, false
	}
	// An emulator may leave the boot modes out; AWS always lists them.
	if len(info.SupportedBootModes) > 0 && !slices.Contains(info.SupportedBootModes, ec2types.BootModeTypeUefi) {
		return t, false
	}
	return t, true
}

// sortTypes orders types cheapest first: those with a known price by price, then the others by vCPUs and memory;
// the name breaks ties, so the order is the same on every node.
func sortTypes(ts []instanceType) {
	slices.SortFunc(ts, func(a, b instanceType) int {
		known := func(t instanceType) int {
			if t.Price > 0 {
				return 0
			}
			return 1
		}
		return cmp.Or(cmp.Compare(known(a), known(b)), cmp.Compare(a.Price, b.Price), cmp.Compare(a.VCPUs, b.VCPUs),
			cmp.Compare(a.MemoryMiB, b.MemoryMiB), cmp.Compare(a.Name, b.Name))
	})
}

// needs is what a plan asks of an instance type: its vCPUs, and its memory plus guestOverheadMiB.
func needs(p vm.Plan) (cpus, memMiB int) { return max(p.CPUs, 1), p.MemoryMiB + guestOverheadMiB }

func (t instanceType) fits(p vm.Plan) bool {
	cpus, mem := needs(p)
	return t.VCPUs >= cpus && t.MemoryMiB >= mem
}

// chooseTypes returns the instance types a plan may run on, the one to try first first: the allowed types (ts,
// sorted by sortTypes) that fit it, or only the type the pod's annotation names, which must be allowed and fit. An
// error says why none will do, in words for the pod's Events.
func chooseTypes(ts []instanceType, p vm.Plan) ([]instanceType, error) {
	cpus, mem := needs(p)
	if name := p.Annotations[AnnotationInstanceType]; name != "" {
		i := slices.IndexFunc(ts, func(t instanceType) bool { return t.Name == name })
		if i < 0 {
			return nil, fmt.Errorf("instance type %q (annotation %s) is not allowed on this node; allowed: %s",
				name, AnnotationInstanceType, typeNames(ts, 12))
		}
		if !ts[i].fits(p) {
			return nil, fmt.Errorf("instance type %s (annotation %s) has %d vCPUs and %d MiB; the pod needs %d vCPUs and %d MiB "+
				"(%d MiB of it for the guest)", name, AnnotationInstanceType, ts[i].VCPUs, ts[i].MemoryMiB, cpus, mem, guestOverheadMiB)
		}
		return ts[i : i+1], nil
	}
	var out []instanceType
	for _, t := range ts {
		if t.fits(p) {
			out = append(out, t)
		}
	}
	if len(out) == 0 {
		largest := "none"
		if len(ts) > 0 {
			l := slices.MaxFunc(ts, func(a, b instanceType) int {
				return cmp.Or(cmp.Compare(a.MemoryMiB, b.MemoryMiB), cmp.Compare(a.VCPUs, b.VCPUs))
			})
			largest = fmt.Sprintf("%s with %d vCPUs and %d MiB", l.Name, l.VCPUs, l.MemoryMiB)
		}
		return nil, fmt.Errorf("no allowed instance type has %d vCPUs and %d MiB (%d MiB of it for the guest); the largest is %s",
			cpus, mem, guestOverheadMiB, largest)
	}
	return out, nil
}

// typeNames lists the first n types' names.
func typeNames(ts []instanceType, n int) string {
	var names []string
	for i, t := range ts {
		if i == n {
			names = append(names, fmt.Sprintf("and %d more", len(ts)-n))
			break
		}
		names = append(names, t.Name)
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}
