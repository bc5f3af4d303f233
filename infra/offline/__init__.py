"""What runs without a cloud: the mocks that run the real Pulumi program and record every
resource (`mocking`), the offline render of a stack's graph (`render`), and the preview diff
between two commits (`diff`). The Pulumi program never imports this package."""
