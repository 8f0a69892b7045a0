package proxy

// observer: placeholder, replaced by the traffic observer.
type trafficObserver struct{}

func (o *trafficObserver) state() (idle bool, command string) { return false, "" }
