"""The shared placement: notebooks as containers packed onto Docker-host VMs the hub boots, grows and shrinks."""
