"""edgesim device-fleet simulator."""
