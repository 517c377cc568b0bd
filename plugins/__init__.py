"""imgproc's built-in plugins, each registered through the `imgproc` entry-point group."""
