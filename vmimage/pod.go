package vmimage

import (
	corev1 "k8s.io/api/core/v1"
)

// FromPod turns a Pod into the Spec of its VM image. It is a pure function of what is code in the pod — container
// images and working directories — so that a Deployment's replicas and a pod's restarts share one image, and so
// do pods that differ only in their commands. Commands and arguments (with $(VAR) references to runtime values),
// env values, Secrets, ConfigMaps, tokens and the pod's identity are runtime data sent to the agent after boot;
// none of them enter the spec. Init containers become onboot containers in order; sidecar init
// containers (restartPolicy Always) run for the pod's life and become services, ahead of the app containers.
// The agent starts a node-configured pod in the pod's own order, from its runtime configuration
// (protocol.ContainerConfig.Init), not in the image's. Image volumes are code too: each becomes a volume of the
// spec, another read-only disk, so that pods mounting different images do not share a VM image.
func FromPod(pod *corev1.Pod) *Spec {
	s := &Spec{}
	var sidecars []Container
	for _, c := range pod.Spec.InitContainers {
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			sidecars = append(sidecars, fromContainer(c))
			continue
		}
		s.Onboot = append(s.Onboot, fromContainer(c))
	}
	s.Services = append(sidecars, s.Services...)
	for _, c := range pod.Spec.Containers {
		s.Services = append(s.Services, fromContainer(c))
	}
	for _, v := range pod.Spec.Volumes {
		if v.Image != nil {
			s.Volumes = append(s.Volumes, Volume{Name: v.Name, Image: v.Image.Reference})
		}
	}
	s.SetDefaults()
	return s
}

func fromContainer(c corev1.Container) Container {
	return Container{
		Name:       c.Name,
		Image:      c.Image,
		WorkingDir: c.WorkingDir,
	}
}
