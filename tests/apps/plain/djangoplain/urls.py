from django.http import HttpRequest, HttpResponse
from django.urls import path


def order(request: HttpRequest, order_id: int) -> HttpResponse:
    return HttpResponse(f"order {order_id}")


urlpatterns = [path("orders/<int:order_id>", order)]
