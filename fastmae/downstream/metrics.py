"""Classification metrics from scores: top-k accuracy and the confusion matrix."""
import torch


def topk_correct(scores: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> dict[int, int]:
    """Number of samples whose label is among the k highest scores, per k (k is capped at
    the number of classes, so top-5 of a 3-class problem is top-3)."""
    out = {}
    maxk = min(max(ks), scores.shape[1])
    top = scores.topk(maxk, dim=1).indices
    hit = top.eq(labels.view(-1, 1))
    for k in ks:
        out[k] = int(hit[:, :min(k, maxk)].any(dim=1).sum())
    return out


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """cm[true, predicted] counts, int64."""
    idx = labels.view(-1).long() * num_classes + preds.view(-1).long()
    return torch.bincount(idx.cpu(), minlength=num_classes * num_classes).view(num_classes, num_classes)


class Evaluation:
    """Accumulates scores batch by batch into top-1/top-5 and a confusion matrix."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.n = 0
        self.correct = {1: 0, 5: 0}
        self.cm = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, scores: torch.Tensor, labels: torch.Tensor) -> None:
        scores, labels = scores.detach().float().cpu(), labels.detach().cpu()
        for k, v in topk_correct(scores, labels).items():
            self.correct[k] += v
        self.cm += confusion_matrix(scores.argmax(dim=1), labels, self.num_classes)
        self.n += labels.numel()

    def result(self) -> dict:
        n = max(self.n, 1)
        return {"acc1": 100.0 * self.correct[1] / n, "acc5": 100.0 * self.correct[5] / n, "n": self.n}
