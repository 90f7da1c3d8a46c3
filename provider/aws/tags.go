package aws

// The tags the backend puts on what it creates, and lists them by. Instances carry the cluster, node and pod tags;
// snapshots and AMIs the cluster and image-digest tags (they are shared by the node's pods of one image).
const (
	TagCluster      = "i2kit.io/cluster"
	TagNode         = "i2kit.io/node"
	TagPodNamespace = "i2kit.io/pod-namespace"
	TagPodName      = "i2kit.io/pod-name"
	TagPodUID       = "i2kit.io/pod-uid"
	// TagImageDigest is the content digest of the vmimage an AMI or snapshot holds.
	TagImageDigest = "i2kit.io/image-digest"
	// TagLastUsed is when a pod was last launched from an AMI (RFC 3339); unused images are garbage.
	TagLastUsed = "i2kit.io/last-used"
	// TagAgentKey keeps the agent's key fingerprint ("sha256:<hex>") the node pinned from the instance's console.
	TagAgentKey = "i2kit.io/agent-key"
	// TagName is the console's name column.
	TagName = "Name"
)

// The pod annotations the backend reads.
const (
	// AnnotationInstanceType names the instance type a pod runs on, overriding the cheapest that fits; it must be
	// one of the allowed types.
	AnnotationInstanceType = "i2kit.io/instance-type"
	// AnnotationInstanceMetadata set to "enabled" keeps the instance metadata service reachable from the pod's
	// containers; by default the agent blocks it and the node turns the endpoint off once the agent has connected.
	AnnotationInstanceMetadata = "i2kit.io/instance-metadata"
)
