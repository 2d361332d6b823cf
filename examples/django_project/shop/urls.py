from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path

from sflow_app import transaction


@transaction("price", application="shop")
def price(order_id: int) -> int:
    return order_id * 250


def order(request: HttpRequest, order_id: int) -> JsonResponse:
    return JsonResponse({"id": order_id, "cents": price(order_id)})


def healthz(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


urlpatterns = [
    path("orders/<int:order_id>", order),
    path("healthz", healthz),
]
