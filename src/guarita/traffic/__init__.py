"""Traffic and cost control: what a caller may use, admitted exactly across processes."""
