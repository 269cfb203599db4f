"""`sam-app`: a local web page to click on images and see a trained SAM's masks."""
