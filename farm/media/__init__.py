"""The media a job makes: ffmpeg encoding, contact sheets, manifests, and the acceleration probe."""
